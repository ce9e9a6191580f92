"""What the tracker learned, kept across restarts and shared by replicas (docs/http-api.md,
"What the tracker learned"): :mod:`tracker.learning.sync` writes the document of
:mod:`tracker.learning.learned` to the cache directory and the bucket, reads every replica's back
and gives the index and the rejections what they hold. It imports nothing of the proxy."""
