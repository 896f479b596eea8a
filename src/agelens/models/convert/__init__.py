"""Format converters run by `agelens models fetch`: TFLite and TF.js weights to ONNX.

They are our own code because the general-purpose converters (tf2onnx, tflite2onnx) pull in
TensorFlow or are unmaintained, while the graphs we convert use a handful of operators.
"""
