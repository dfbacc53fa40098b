"""week3_finetune_lora: coming in a later release of the curriculum; see README.md in this folder."""
