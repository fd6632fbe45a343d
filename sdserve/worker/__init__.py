"""Workers: one spawned process per device that takes jobs, runs the engine and stores images."""
