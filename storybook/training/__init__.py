"""registry -> training: a character's identity built from its photos, by any method (storybook/identities/),
in one training loop (loop.py) with its settings, losses, checkpoints and class images beside it."""
