"""
What llamaswap tells observers: the event bus (L{events}), the proxy and
upstream logs (L{logs}, L{timestamps}), and token metrics (L{metrics},
found in answers as they pass by L{usage}).
"""
