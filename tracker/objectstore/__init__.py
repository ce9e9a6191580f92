"""The object-store tier (docs/http-api.md#with-an-object-store-object_store): replicas share one
S3-compatible bucket as their cache.

:mod:`~tracker.objectstore.keys` where each object lives (and which keys are archives);
:mod:`~tracker.objectstore.replicas` whether a lock's holder may be followed;
:mod:`~tracker.objectstore.bucket` is every call to the store (boto3 in worker threads:
signing and the multipart protocol are the library's), with its clients in
:mod:`~tracker.objectstore.botoclients`, what the store answers as values in
:mod:`~tracker.objectstore.storeanswers` and the store's health in
:mod:`~tracker.objectstore.storehealth`; :mod:`~tracker.objectstore.locks` the
one-refresher-per-file lock objects; :mod:`~tracker.objectstore.upload` a multipart upload
that follows a growing local file; :mod:`~tracker.objectstore.retention` which objects may go
and :mod:`~tracker.objectstore.retainer` their deletion, now or once their last URL expired;
:mod:`~tracker.objectstore.known` what this replica knows of the objects (and for how long);
:mod:`~tracker.objectstore.startup` what it does with the bucket when it starts;
:mod:`~tracker.objectstore.tier` this replica's side of the bucket (lookups, digests,
presigned URLs handed out, the refresh lock, the health watcher, status).

May import: :mod:`tracker.net`, :mod:`tracker.core`, :mod:`tracker.errors` (not the disk
cache: an upload follows any file that grows, through :class:`~tracker.objectstore.upload.Growing`).
"""
