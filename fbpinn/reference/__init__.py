"""Classical solvers that give reference solutions where no exact one is known."""
