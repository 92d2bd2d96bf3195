"""The feature store: id-keyed safetensors shards, a manifest, per-shard done markers.

:mod:`.format` is the read side and the layout (names, fingerprints, done markers, :func:`open`,
:class:`FeatureStore`); :mod:`.write` the write protocol (:class:`StoreWriter`: lock, staging, shards,
markers, manifest, promotion; :func:`write_store` for in-memory tensors). Every name is re-exported here,
so ``from spatialprobe.store import X`` and ``spatialprobe.store.open(...)`` work as before.
"""

from .format import (DTYPES, FORMAT_VERSION, LOCK_NAME, MANIFEST, PARTIAL_PREFIX, TRASH_PREFIX, FeatureStore,
                     done_name, find_stores, fingerprint, open, read_marker, shard_name, store_dirname, torch_dtype)
from .write import (StoreLock, StoreWriter, atomic_write_bytes, atomic_write_json, clean_leftovers, clean_temp_files,
                    partial_dir, promote, promote_over, write_shard, write_store)

__all__ = [
    "DTYPES", "FORMAT_VERSION", "LOCK_NAME", "MANIFEST", "PARTIAL_PREFIX", "TRASH_PREFIX", "FeatureStore",
    "StoreLock", "StoreWriter", "atomic_write_bytes", "atomic_write_json", "clean_leftovers", "clean_temp_files",
    "done_name", "find_stores", "fingerprint", "open", "partial_dir", "promote", "promote_over", "read_marker",
    "shard_name", "store_dirname", "torch_dtype", "write_shard", "write_store",
]
