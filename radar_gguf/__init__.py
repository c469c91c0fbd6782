"""radar_gguf: Radar long-context decoding (ICLR 2025) for GGUF models, inside llama.cpp.

>>> import radar_gguf
>>> with radar_gguf.load("model.gguf", ctx=65536) as model:
...     for r in model.stream_generate("Once upon a time", max_tokens=32):
...         print(r.text, end="", flush=True)
"""

__version__ = "0.1.0"

from .config import RadarConfig, RadarStats  # noqa: E402
from .engine import GenerationResponse, Model, load  # noqa: E402

__all__ = ["GenerationResponse", "Model", "RadarConfig", "RadarStats", "__version__", "load"]
