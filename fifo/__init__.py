"""FIFO diagonal denoising and its consistency tricks, on top of the models in ``lvdm``.

options (what the user chose) → generator (one video per prompt) → run (state + step) →
sinks (where frames go). The samplers (``ddim``, ``step``) take a guided denoiser and a noise
source, never the model's internals; the tricks (``tricks``) install attention processors or
swap a part of the step.
"""
