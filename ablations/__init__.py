"""Ablation grids of 4M pretraining + transfer runs (see ablations/README.md); submitted by `fourm-bench sweep`."""
