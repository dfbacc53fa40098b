"""week2_serving: coming in a later release of the curriculum; see README.md in this folder."""
