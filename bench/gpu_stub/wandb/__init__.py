"""Stand-in for wandb on the GPU machine (bench/gpu.sh puts it last on the path): sae-lens
imports wandb at module level for its training logs, which the GPU run never writes, and the
real wheel (30 MB) does not fit the 64 MiB the device run may carry. Any use fails loudly."""


def __getattr__(name: str) -> object:
    raise AttributeError(f"wandb.{name}: wandb is not installed on this machine (bench/gpu.sh)")
