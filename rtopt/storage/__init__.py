"""Storage of rtopt logs, from the bottom up (each module imports only those listed before it):

- :mod:`rtopt.storage.interface`: :class:`~rtopt.storage.interface.EventLog`, what every backend stores (the
  columns, the hash chain, the meta keys) and offers (append, read, meta data, snapshots, tracking);
- :mod:`rtopt.storage.group`: :class:`~rtopt.storage.group.GroupCommitLog`, which holds a log's appends in
  memory and writes them in groups (``durability="group"``);
- :mod:`rtopt.storage.sql`: what the SQL backends share (reading, placing a batch, the audit, tracking);
- :mod:`rtopt.storage.sqlite` and :mod:`rtopt.storage.postgres`: the two backends;
- :mod:`rtopt.storage.factory`: :func:`~rtopt.storage.factory.open_log`, which picks one by location.
"""
