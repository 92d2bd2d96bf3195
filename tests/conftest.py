import os

os.environ.setdefault("MPLBACKEND", "Agg")

# content hashes of test images go to a throw-away cache, not the user's ~/.cache
if "SPATIALPROBE_CACHE" not in os.environ:
    import tempfile

    os.environ["SPATIALPROBE_CACHE"] = tempfile.mkdtemp(prefix="spatialprobe-test-cache-")
