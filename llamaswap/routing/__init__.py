"""
Which models may run together and in what order: the group policies
(L{groups}) and the scheduler that admits requests and decides swaps
(L{scheduler}).
"""
