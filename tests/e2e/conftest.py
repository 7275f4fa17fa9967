"""Whole stories: the demo, fault drills, the README's commands and the images."""
