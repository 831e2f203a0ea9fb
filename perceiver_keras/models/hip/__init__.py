"""Hierarchical Perceiver (HiP), exact to google-deepmind/hierarchical_perceiver."""
