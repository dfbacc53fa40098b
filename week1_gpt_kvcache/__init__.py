"""week1_gpt_kvcache: coming in a later release of the curriculum; see README.md in this folder."""
