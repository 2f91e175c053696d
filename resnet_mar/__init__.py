"""Build side of the toolkit: weights, TorchScript export, label maps, serving settings,
TorchServe control, a client and the benchmark. Nothing here runs inside TorchServe."""
