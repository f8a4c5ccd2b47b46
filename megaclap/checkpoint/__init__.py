"""Checkpoint conversion: HF <-> megaclap key maps (keymaps), whole-checkpoint merge/shard
(io), HF folders (hf), and text generation from a checkpoint (generate)."""
