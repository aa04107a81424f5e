"""The model layer: loading Phi-2 (or the tiny stand-in) with LoRA, the loss of a forward pass.
Imports only the data layer and the foundation modules."""
