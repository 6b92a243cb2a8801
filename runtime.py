"""Process-wide settings that must be made before `import torch`: main.py and benchmark.py import this first."""
import os

# oneDNN caches one convolution primitive per input shape. Clips of varying length make a new shape nearly
# every batch, and the default cache (1024 entries) grows CPU memory past 2 GB even on the demo; 128 entries
# keep the speed and bound the memory.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "128")
