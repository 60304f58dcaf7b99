"""The planner: cost model (cost.py) and search (search.py)."""

from edgeopt.planner.search import Candidate, CandidateRow, Plan, Status, make_plan

__all__ = ["Candidate", "CandidateRow", "Plan", "Status", "make_plan"]
