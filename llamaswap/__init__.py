"""
llamaswap: one OpenAI-compatible endpoint in front of many local inference
servers, started, health-checked, swapped and stopped on demand.
"""

__version__ = "0.1.0"
