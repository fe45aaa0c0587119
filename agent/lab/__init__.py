"""The lab: a multi-node weave-py cluster on one machine, one network namespace per node."""
