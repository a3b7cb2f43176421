"""`driftlm run`: the loop over dated slices (trigger, vocabulary update, training, distillation,
comparison, serving), its arms side by side, and its report."""
