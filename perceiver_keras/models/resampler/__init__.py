"""The Perceiver Resampler family (Flamingo, IDEFICS, Idefics2)."""
