"""Pure data and rules, stdlib only: units, names, subjects, errors, events, text."""
