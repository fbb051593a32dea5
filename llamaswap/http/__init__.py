"""
The HTTP side: the site and its requests (L{site}), the thin Klein routes
(L{routes}), the owner of a proxied request's path (L{gateway}), the
streaming reverse proxy (L{proxy}) and its upstream client (L{client}),
the loading-state stream (L{loading}), long-lived streams (L{streams}),
request bodies and their rewriting (L{bodies}, L{jsonbody}, L{multipart}),
answers llamaswap writes itself (L{answers}) and where it listens
(L{listen}).
"""
