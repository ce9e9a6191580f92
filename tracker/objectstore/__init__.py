"""The object-store tier (SPEC §10): replicas share one S3-compatible bucket as their cache.

:mod:`~tracker.objectstore.keys` where each object lives (and which keys are archives);
:mod:`~tracker.objectstore.replicas` whether a lock's holder may be followed;
:mod:`~tracker.objectstore.bucket` is the S3 client (boto3 in worker threads: signing and the
multipart protocol are the library's) and the store's health; :mod:`~tracker.objectstore.locks`
the one-refresher-per-file lock objects; :mod:`~tracker.objectstore.upload` a multipart
upload that follows a growing local file; :mod:`~tracker.objectstore.retention` which objects
may go; :mod:`~tracker.objectstore.tier` what this replica knows of the bucket (objects,
presigned URLs handed out, start-up clean-up, status).

May import: :mod:`tracker.net`, :mod:`tracker.core`, :mod:`tracker.errors` (not the disk
cache: an upload follows any file that grows, through :class:`~tracker.objectstore.upload.Growing`).
"""
