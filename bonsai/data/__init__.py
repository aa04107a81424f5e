"""The data layer: records and their schema, the sharded stream, the template, packing, and the
dataset tools (audit, convert, shard, publish). Imports nothing above it."""
