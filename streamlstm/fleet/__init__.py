"""A fleet of ``streamlstm run`` workers sharing sensors over NATS JetStream.

Sensors publish MQTT to nats-server's MQTT listener; an account subject mapping hashes
each sensor id into one of P fixed partitions (``part.<p>.sensors.<id>.accel``); one
stream captures them (sourcing ``$MQTT_msgs``, so that nothing MQTT acknowledged can be
lost with a node). Each partition is owned by one worker at a time (a lease in a KV
bucket with a TTL); the owner steps the partition's samples through its own detector and
snapshots that state with the stream sequence it covers. A new owner restores the
snapshot and replays from the next sequence. Modules: :mod:`.config` (settings and
subject names), :mod:`.connection` (connecting, the stream and buckets), :mod:`.leases`,
:mod:`.snapshots`, :mod:`.partitions` (one owned partition's compute), :mod:`.journal`
(the audit trail), :mod:`.metrics`, :mod:`.worker` (the asyncio loop tying them
together) and :mod:`.status` (``streamlstm fleet status``).
"""
