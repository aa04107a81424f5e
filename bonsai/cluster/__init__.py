"""Running on a cluster: `bonsai slurm submit` and the helpers slurm/train.sbatch calls."""
