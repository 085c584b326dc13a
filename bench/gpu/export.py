"""Exports torchvision's resnet50 (random weights, seed 0: timing and CPU/GPU agreement only) to
ONNX with a dynamic batch dimension, input `x` f32[B,3,224,224], output `y` f32[B,1000]; and a
fixed input tensor. Usage: export.py MODEL.onnx INPUT.npy (needs torch and torchvision)."""
import sys

import numpy as np
import torch
import torchvision

torch.manual_seed(0)
model = torchvision.models.resnet50(weights=None).eval()
x = torch.randn(1, 3, 224, 224)
try:
    torch.onnx.export(model, x, sys.argv[1], input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=17, dynamo=False)
except Exception as e:  # a torch without the TorchScript exporter
    print("TorchScript export failed, using torch.export:", e, flush=True)
    torch.onnx.export(model, (x,), sys.argv[1], input_names=["x"], output_names=["y"],
                      dynamic_shapes={"x": {0: torch.export.Dim("b", min=1, max=256)}}, dynamo=True)
np.save(sys.argv[2], np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32))
