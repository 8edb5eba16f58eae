-- Where `train` wrote the job's HTML report (confusion matrix, score distributions, ROC curve,
-- CV folds, search): a path on the machine that trained; NULL when none was written.
ALTER TABLE training_jobs ADD COLUMN report_path text;
