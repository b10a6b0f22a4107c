"""The review console: moderators review, restore and confirm quarantine items from a browser (web.py), with
who may decide what (people.py), the decisions themselves (decisions.py) and what the pages show
(views.py)."""
