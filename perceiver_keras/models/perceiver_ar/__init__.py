"""Perceiver AR: long-context autoregressive modelling (Hawthorne et al.)."""
