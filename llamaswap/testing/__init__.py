"""
Test helpers shipped with the package: the fake OpenAI-compatible upstream
(L{llamaswap.testing.upstream}) and in-memory stand-ins for unit tests
(L{llamaswap.testing.fakes}).
"""
