"""The Playground page (:mod:`.page`, with its Try tab), its Compare and Prompt set tabs (:mod:`.compare`) and its
Blend tab (:mod:`.blend`)."""
