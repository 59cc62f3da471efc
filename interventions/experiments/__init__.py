"""Drivers that train many runs and print result tables (Pareto sweep, the paper tables), on one
shared runner (:mod:`.runner`).  Nothing in the library imports them."""
