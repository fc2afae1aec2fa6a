"""Coordination: which instance does which file, leases, commits, completion records and
the state prefix.

``factory.open_coordinator`` makes the run's coordinator: ``base.Coordinator`` with its two
strategies, ``static.StaticCoordinator`` (over ``plan``, for an ``identity``) and
``leased.LeaseCoordinator`` (over ``lease``). Each file it hands out is a ``claim.Claim``,
committed exactly once (``commit``) and recorded (``records``); ``listing`` is the run's
snapshot, ``summary`` the job summary, ``state`` the layout of the state prefix.
"""
