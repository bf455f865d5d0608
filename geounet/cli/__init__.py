"""The command line: the only part of geounet that imports click and tqdm."""
