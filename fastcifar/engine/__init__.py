"""Layer 4: what a run is and how it trains.

``trainer`` (the loop), ``build`` (``build_trainer``: a recipe and options to a ready
``Trainer``), ``components`` (device, data, loaders, model, loss), ``optim`` and ``muon``
(loss, optimizer, schedule, EMA), ``tta``, ``lr_range`` (the LR range test), ``loggers``,
``runtime`` (device, AMP, compile), ``distributed`` (torchrun), ``rundir`` and ``runlock``
(the run directory). Nothing is re-exported: import the module that holds the name.
"""
