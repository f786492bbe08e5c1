"""lessor's tests, by layer: core/, actors/, transport/, supervisor/, e2e/.

A package, as is each folder, so test modules import as ``tests.<layer>.test_x``
and two of them may share a basename. Shared helpers live in ``tests.support``;
``tests.workers`` holds what worker processes import by name.
"""
