"""The partition log on disk: segments of RecordBatch v2 bytes, sparse indexes, recovery, retention.

One partition worker owns a ``Log`` (single-threaded, not thread-safe); other processes read the
same files through ``LogReader`` without locks. Only ``records`` and ``errors`` are imported here.
"""
