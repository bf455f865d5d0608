"""The network and its files: the U-Net (:mod:`.unet`), the model contract (:mod:`.contract`),
safetensors model files (:mod:`.checkpoint`), ONNX export (:mod:`.export`), reading ONNX
files (:mod:`.onnx_file`) and running them with onnxruntime (:mod:`.backends`).
"""
