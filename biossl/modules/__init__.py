"""LightningModules (the only place Lightning training code lives) and their callbacks."""
