-- The hyperparameter search of a training job (`train --search`): every candidate with its
-- fold accuracies, mean, std and fit time, and the one picked.
ALTER TABLE training_jobs ADD COLUMN search jsonb;
