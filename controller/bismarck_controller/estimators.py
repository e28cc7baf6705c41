"""scikit-learn-style estimators whose data stays in PostgreSQL.

    from bismarck_controller.estimators import SGDClassifier

    clf = SGDClassifier(loss="log_loss", learning_rate="adaptive", random_state=0)
    clf.fit(None, table="cancer_train", label="malignant", features=["radius", "texture"])
    clf.score(None, table="cancer_test")

Parameters keep scikit-learn's names and are translated to bismarck's (``log_loss`` ->
``logistic``, ``max_iter`` -> ``max_epochs``, ``random_state`` -> ``seed``, ...); they are
validated by :func:`bismarckpy.params.validate`, the same rules as SQL and the CLI. Each method
takes the database first: a psycopg connection, a SQLAlchemy engine or connection, a URL, or
None ($BISMARCK_DSN, else the embedded database). Fitting stores a model version in
``bismarck.models``; the fitted attributes end in an underscore.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from bismarck_controller import training
from bismarck_controller.notebook import Database, connected
from bismarckpy import kinds, losses
from bismarckpy.errors import InvalidParameter
from bismarckpy.params import refuse_unused, validate

#: scikit-learn's parameter names -> bismarck's (the others are the same in both).
RENAMED = {"max_iter": "max_epochs", "random_state": "seed"}
_SHUFFLE = {True: "once", False: "never"}


class _BaseSGD:
    """Shared parameters, fit, predict and history of the two estimators."""

    KIND: ClassVar[str] = "glm"  # the model kind (bismarckpy.kinds) the estimator trains
    LOSSES: ClassVar[dict[str, str]] = {}  # scikit-learn loss name -> bismarck loss name
    SCORE: ClassVar[str] = ""  # the metric score() returns

    def __init__(self, loss: str, *, penalty: str = "l2", alpha: float = 0.0001,
                 l1_ratio: float = 0.15, fit_intercept: bool = True, max_iter: int = 100,
                 tol: float | None = 1e-3, n_iter_no_change: int = 5,
                 learning_rate: str | None = None, eta0: float | None = None,
                 power_t: float | None = None,
                 batch_size: int | None = None, shuffle: bool | str = True,
                 random_state: int | None = None, validation_fraction: float = 0.0,
                 standardize: bool = True, model_name: str | None = None,
                 solver: str = "sgd", average: bool | None = None) -> None:
        self.loss = loss
        self.solver = solver
        self.penalty = penalty
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.learning_rate = learning_rate
        self.eta0 = eta0
        self.power_t = power_t
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.random_state = random_state
        self.validation_fraction = validation_fraction
        self.standardize = standardize
        self.model_name = model_name
        self.average = average

    # --- parameters ---------------------------------------------------------------------------

    _PARAM_NAMES: ClassVar[tuple[str, ...]] = (
        "loss", "penalty", "alpha", "l1_ratio", "fit_intercept", "max_iter", "tol",
        "n_iter_no_change", "learning_rate", "eta0", "power_t", "batch_size", "shuffle",
        "random_state", "validation_fraction", "standardize", "model_name", "solver", "average")

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters (scikit-learn's protocol)."""
        return {name: getattr(self, name) for name in self._PARAM_NAMES}

    def set_params(self, **params: Any) -> _BaseSGD:
        """Change constructor parameters; returns self."""
        for name, value in params.items():
            if name not in self._PARAM_NAMES:
                raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}; valid "
                                 f"parameters: {', '.join(self._PARAM_NAMES)}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = type(self)().get_params()
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if v != defaults[k]]
        return f"{type(self).__name__}({', '.join(changed)})"

    def bismarck_params(self) -> dict[str, Any]:
        """The parameters in bismarck's names, validated as ``bismarck.train_glm`` does."""
        if self.loss not in self.LOSSES:
            choices = ", ".join(repr(k) for k in self.LOSSES)
            raise InvalidParameter(
                "invalid value for parameter 'loss'",
                detail=f"The 'loss' parameter of {type(self).__name__} must be one of "
                       f"{choices}. Got {self.loss!r} instead.",
                hint="Use SGDClassifier for log_loss, hinge or softmax, SGDRegressor for "
                     "squared_error.")
        values = {name: getattr(self, name) for name in self._PARAM_NAMES
                  if name not in ("loss", "model_name", "shuffle")}
        values = {RENAMED.get(k, k): v for k, v in values.items()}
        values["loss"] = self.LOSSES[self.loss]
        if values["learning_rate"] is None:  # the loss's default (softmax: adaptive)
            del values["learning_rate"]
        if values["average"] is None:  # averaged SGD where the loss has it (not softmax)
            del values["average"]
        shuffle = self.shuffle
        values["shuffle"] = _SHUFFLE[shuffle] if isinstance(shuffle, bool) else shuffle
        kind = losses.REGISTRY[values["loss"]].kind
        refuse_unused(values, kinds.get(kind).params, values["loss"], kind, unset="None",
                      solver=str(values["solver"]).strip().lower())
        checked = validate(values, params=kinds.get(kind).params)
        return {k: checked[k] for k in values}  # the rest take the engine's defaults

    # --- fitting ------------------------------------------------------------------------------

    def fit(self, conn: Database, table: str, label: str,
            features: Sequence[str] | str) -> _BaseSGD:
        """Train on ``table`` in the server and store the model; returns self.

        ``features`` is a list of numeric columns or the name of one float8[] column. The model
        is stored as the next version of ``model_name`` (default: the table's name).
        """
        params = self.bismarck_params()
        with connected(conn) as c:
            result = training.train(c, table, label, features, self.model_name, kind=self.KIND,
                                    **params)
            row = training.model(c, result.model_name, result.version)
            hist = training.history(c, result.model_name, result.version)
        self._set_fitted(row, hist)
        return self

    @classmethod
    def from_model(cls, conn: Database, name: str, version: int | None = None) -> _BaseSGD:
        """A fitted estimator for a stored model (latest version unless given)."""
        with connected(conn) as c:
            row = training.model(c, name, version)
            hist = training.history(c, name, row["version"])
        losses = {v: k for k, v in cls.LOSSES.items()}
        if row["loss"] not in losses:
            other = "SGDRegressor" if issubclass(cls, SGDClassifier) else "SGDClassifier"
            raise InvalidParameter(
                f"model {name!r} has loss {row['loss']!r}, which {cls.__name__} cannot use",
                hint=f"Load it with {other}.from_model.")
        p = row["params"]
        shuffle = {v: k for k, v in _SHUFFLE.items()}.get(p.get("shuffle"), p.get("shuffle"))
        kwargs = {k: p[RENAMED.get(k, k)] for k in cls._PARAM_NAMES
                  if RENAMED.get(k, k) in p and k not in ("loss", "shuffle")}
        est = cls(loss=losses[row["loss"]], shuffle=shuffle, model_name=name, **kwargs)
        est._set_fitted(row, hist)
        return est

    def _set_fitted(self, row: dict[str, Any], hist: list[dict[str, Any]]) -> None:
        """Fitted attributes from a registry row and its history."""
        import pandas as pd

        self.model_name_ = row["model_name"]
        self.version_ = int(row["version"])
        self.feature_names_in_ = np.asarray(row["features"], dtype=object)
        stored = row.get("stored") or {}
        if row.get("kind") == "softmax":  # K × d weights and K intercepts
            self.coef_ = np.asarray(stored["coef"], dtype=float)
            self.intercept_ = np.asarray(stored["intercept"], dtype=float)
        else:
            coef = np.asarray(row["coef"], dtype=float)
            self.coef_ = coef.reshape(1, -1) if row["classes"] is not None else coef
            self.intercept_ = np.array([float(row["intercept"])])
        self.n_features_in_ = self.coef_.shape[-1]
        metrics = row["metrics"] or {}
        self.n_iter_ = int(metrics.get("epochs") or len(hist))
        self.converged_ = bool(metrics.get("converged"))
        columns = ["epoch", "train_loss", "validation_loss", "learning_rate", "rows", "seconds"]
        run = max((r["run_id"] for r in hist), default=None)
        self.history_ = pd.DataFrame([{k: r[k] for k in columns} for r in hist
                                      if r["run_id"] == run], columns=columns)
        if row["classes"] is not None:
            self.classes_ = label_values(row)
        self.metrics_ = dict(metrics)
        fitted = row.get("fitted") or {}
        # Every fit sets all four, so a refit never shows the previous fit's statistics: arrays
        # (intercept first; NaN where a statistic is NULL) for an unpenalised exact fit that
        # converged, None otherwise (SGD, a penalty, or a fit stopped by max_epochs).
        if fitted.get("std_err") is not None:
            self.std_err_ = _floats(fitted["std_err"])
            self.statistic_ = _floats(fitted["statistic"])
            self.p_values_ = _floats(fitted["p_value"])
            self.vcov_ = np.asarray(fitted["vcov"], dtype=float)
        else:
            self.std_err_ = self.statistic_ = self.p_values_ = self.vcov_ = None

    def summary(self, conn: Database) -> Any:
        """Coefficients with standard errors, z or t statistics and p-values (a DataFrame).

        Statistics are NULL (NaN) unless the model is an unpenalised newton or lbfgs fit.
        """
        import pandas as pd

        self._check_fitted()
        with connected(conn) as c:
            rows = training.coefficients(c, self.model_name_, self.version_)
        return pd.DataFrame(rows, columns=["feature", "coef", "std_err", "statistic",
                                           "p_value"]).set_index("feature")

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_name_"):
            raise AttributeError(f"this {type(self).__name__} is not fitted yet: call fit() "
                                 f"or {type(self).__name__}.from_model() first")

    # --- scoring ------------------------------------------------------------------------------

    def _scores(self, conn: Database, table: str, func: str, output: str | None,
                order_by: str | None,
                prediction_column: str = "prediction") -> np.ndarray | int:
        """Run ``bismarck.<func>`` over ``table``; an array, or the rows written to ``output``.

        ``func``: predict, predict_class or margin (x·coef + intercept). A row with a NULL,
        NaN or infinite feature scores NaN. ``order_by`` may be a column of any type.
        """
        self._check_fitted()
        kinds = {"classes": func == "predict_class", "margin": func == "margin",
                 "proba": func == "predict_proba"}
        if output is not None:
            with connected(conn) as c:
                n = training.predict(c, self.model_name_, table, version=self.version_,
                                     output=output, prediction_column=prediction_column,
                                     **kinds)
            assert isinstance(n, int)
            return n
        with connected(conn) as c:
            rows = training.predict(c, self.model_name_, table, version=self.version_,
                                    columns=[], order_by=order_by, **kinds)
        assert isinstance(rows, list)
        values = [r["prediction"] for r in rows]
        if func == "predict_proba":  # one array of class probabilities per row
            k = len(getattr(self, "classes_", ())) or 2
            return np.array([[np.nan] * k if v is None else v for v in values], dtype=float)
        classes = getattr(self, "classes_", None)
        if func == "predict_class" and classes is not None and classes.dtype != float:
            # the label's own values (str, bool): None for a row that has no prediction
            out = np.array(values, dtype=object)
            return out if None in values else out.astype(classes.dtype)
        return np.array([np.nan if v is None else v for v in values], dtype=float)

    def predict(self, conn: Database, table: str, output: str | None = None,
                order_by: str | None = None,
                prediction_column: str = "prediction") -> np.ndarray | int:
        """Predictions for every row of ``table``, computed in the server.

        Returns a numpy array in scan order (or ``order_by`` a column of any type); with
        ``output``, writes ``table``'s columns plus ``prediction_column`` to that new table and
        returns its row count (an error, 42701, when ``table`` has a column of that name).
        Rows with a NULL, NaN or infinite feature give NaN (NULL in ``output``).
        """
        return self._scores(conn, table, self._PREDICT, output, order_by, prediction_column)

    _PREDICT: ClassVar[str] = "predict"

    def evaluate(self, conn: Database, table: str) -> dict[str, float | None]:
        """All metrics of ``bismarck.evaluate`` on ``table`` (which holds the label)."""
        self._check_fitted()
        with connected(conn) as c:
            return training.evaluate(c, self.model_name_, table, self.version_)

    def score(self, conn: Database, table: str) -> float:
        """Accuracy (classifier) or R² (regressor) on ``table``."""
        value = self.evaluate(conn, table).get(self.SCORE)
        return float("nan") if value is None else float(value)

    def plot_history(self, ax: Any = None) -> Any:
        """Train (solid) and validation (dashed) loss per epoch of this fit; returns the Axes."""
        from bismarck_controller.plots import Curve, draw

        self._check_fitted()
        h = self.history_
        curve = Curve(f"{self.model_name_} v{self.version_}", h["epoch"].tolist(),
                      _optional(h["train_loss"]), _optional(h["validation_loss"]))
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(7, 4))
        return draw(ax, [curve])


class SGDClassifier(_BaseSGD):
    """Linear classifier (logistic regression, linear SVM or multinomial logistic regression)
    trained by SGD in PostgreSQL.

    ``loss``: ``"log_loss"`` (binary logistic, has :meth:`predict_proba`), ``"hinge"`` (binary
    linear SVM) or ``"softmax"`` (multinomial logistic regression over K >= 2 classes, one
    model; scikit-learn's SGDClassifier would fit K one-vs-rest models instead). A binary
    label holds two classes: 0/1, -1/+1, false/true or two values of any other type (text, an
    enum...); softmax takes K classes of any type. ``classes_`` holds them in the label's
    own type (str for text and enums, bool for booleans, float for numbers), in the order of
    :meth:`predict_proba`'s columns (the second is the positive class of a binary model), and
    :meth:`predict` returns those values. ``learning_rate`` None is the loss's default:
    invscaling, adaptive for softmax; ``average`` None too: averaged SGD, none for softmax.
    """

    LOSSES: ClassVar[dict[str, str]] = {"log_loss": "logistic", "hinge": "hinge",
                                        "softmax": "softmax"}
    SCORE: ClassVar[str] = "accuracy"
    _PREDICT: ClassVar[str] = "predict_class"
    _PARAM_NAMES: ClassVar[tuple[str, ...]] = (*_BaseSGD._PARAM_NAMES, "class_weight")

    def __init__(self, loss: str = "log_loss", *,
                 class_weight: str | dict[Any, float] | None = None, **kwargs: Any) -> None:
        """``class_weight``: None, ``"balanced"`` (``n_samples / (2 * bincount)``) or a dict
        class -> weight, as in scikit-learn; each row's loss is multiplied by its class's."""
        super().__init__(loss, **kwargs)
        self.class_weight = class_weight

    def predict_proba(self, conn: Database, table: str,
                      order_by: str | None = None) -> np.ndarray:
        """``(n, K)`` class probabilities in the order of ``classes_`` (log_loss: K = 2,
        softmax); NaN rows for a row with a NULL, NaN or infinite feature."""
        self._check_fitted()
        if self.LOSSES.get(self.loss) == "softmax":
            proba = self._scores(conn, table, "predict_proba", None, order_by)
            assert isinstance(proba, np.ndarray)
            return proba
        if self.LOSSES.get(self.loss) != "logistic":
            raise AttributeError("predict_proba needs loss='log_loss' or 'softmax'; a hinge "
                                 "model has no probabilities")
        p = self._scores(conn, table, "predict", None, order_by)
        assert isinstance(p, np.ndarray)
        return np.column_stack([1.0 - p, p])

    def decision_function(self, conn: Database, table: str,
                          order_by: str | None = None) -> np.ndarray:
        """``(n,)`` signed scores x·coef_ + intercept_ (positive: ``classes_[1]``); NaN for a row
        with a NULL, NaN or infinite feature. Binary models only."""
        if self.LOSSES.get(self.loss) == "softmax":
            raise AttributeError("decision_function gives a binary model's margin; a softmax "
                                 "model has K: use predict_proba")
        scores = self._scores(conn, table, "margin", None, order_by)
        assert isinstance(scores, np.ndarray)
        return scores


class SGDRegressor(_BaseSGD):
    """Linear regression (squared error) trained by SGD in PostgreSQL."""

    LOSSES: ClassVar[dict[str, str]] = {"squared_error": "squared"}
    SCORE: ClassVar[str] = "r2"

    def __init__(self, loss: str = "squared_error", **kwargs: Any) -> None:
        super().__init__(loss, **kwargs)


class LogisticRegression(SGDClassifier):
    """Maximum-likelihood logistic regression: ``SGDClassifier`` with ``solver="newton"`` and
    ``penalty="none"`` by default; after fitting, ``std_err_``, ``statistic_`` (z),
    ``p_values_``, ``vcov_`` and :meth:`summary` give the inference statistics. Each fit sets
    them: arrays (intercept first) for an unpenalised fit that converged, None for a penalised
    or non-converged one (``converged_`` is False and a :class:`BismarckWarning` is issued)."""

    def __init__(self, loss: str = "log_loss", *, solver: str = "newton", penalty: str = "none",
                 tol: float | None = 1e-8, **kwargs: Any) -> None:
        super().__init__(loss, solver=solver, penalty=penalty, tol=tol, **kwargs)


class LinearRegression(SGDRegressor):
    """Least squares by the normal equations (two passes): ``SGDRegressor`` with
    ``solver="newton"`` and ``penalty="none"`` by default; statistics as
    :class:`LogisticRegression` (t statistics), R² and adjusted R² in ``metrics_``."""

    def __init__(self, loss: str = "squared_error", *, solver: str = "newton",
                 penalty: str = "none", tol: float | None = 1e-8, **kwargs: Any) -> None:
        super().__init__(loss, solver=solver, penalty=penalty, tol=tol, **kwargs)


def label_values(row: dict[str, Any]) -> np.ndarray:
    """A classifier's classes in its label's own type, in class order, from its registry row:
    str for text, varchar and enums (an object array), bool for booleans, float for numbers."""
    stored = row.get("stored") or {}
    labels = stored.get("class_labels")
    if labels is None:
        return np.asarray(row["classes"], dtype=float)
    if stored.get("label_type") == "boolean":
        return np.array([v == "true" for v in labels], dtype=bool)
    return np.array(labels, dtype=object)


#: scikit-learn's MLP parameter names -> bismarck's (the others are the same in both).
MLP_RENAMED = {"hidden_layer_sizes": "hidden", "max_iter": "max_epochs", "random_state": "seed"}


class _BaseMLP(_BaseSGD):
    """Shared parameters, fit and scoring of :class:`MLPClassifier` and :class:`MLPRegressor`:
    scikit-learn's names and defaults; training runs in the server (``bismarck.train_mlp``)."""

    KIND: ClassVar[str] = "mlp"
    TASK: ClassVar[str] = ""
    _PARAM_NAMES: ClassVar[tuple[str, ...]] = (
        "hidden_layer_sizes", "activation", "solver", "alpha", "batch_size", "learning_rate",
        "learning_rate_init", "max_iter", "shuffle", "random_state", "tol", "momentum",
        "nesterovs_momentum", "validation_fraction", "beta_1", "beta_2", "epsilon",
        "n_iter_no_change", "standardize", "model_name")

    def __init__(self, hidden_layer_sizes: Sequence[int] = (100,), *, activation: str = "relu",
                 solver: str = "adam", alpha: float = 0.0001, batch_size: int | str = "auto",
                 learning_rate: str = "constant", learning_rate_init: float = 0.001,
                 max_iter: int = 200, shuffle: bool | str = True,
                 random_state: int | None = None, tol: float | None = 1e-4,
                 momentum: float = 0.9, nesterovs_momentum: bool = True,
                 validation_fraction: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-8, n_iter_no_change: int = 10, standardize: bool = True,
                 model_name: str | None = None) -> None:
        """``batch_size="auto"`` is 200 rows, as scikit-learn's ``min(200, n_samples)``;
        ``validation_fraction`` > 0 holds rows out and stops early on their loss, keeping the
        best epoch (scikit-learn's ``early_stopping=True``); 0 stops on the training loss."""
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.standardize = standardize
        self.model_name = model_name

    def bismarck_params(self) -> dict[str, Any]:
        """The parameters in bismarck's names, validated as ``bismarck.train_mlp`` does."""
        from bismarckpy import kinds

        values = {MLP_RENAMED.get(k, k): getattr(self, k) for k in self._PARAM_NAMES
                  if k not in ("model_name", "shuffle", "batch_size")}
        if isinstance(values["hidden"], int):
            values["hidden"] = [values["hidden"]]
        values["batch_size"] = 200 if self.batch_size == "auto" else self.batch_size
        shuffle = self.shuffle
        values["shuffle"] = _SHUFFLE[shuffle] if isinstance(shuffle, bool) else shuffle
        values["task"] = self.TASK
        checked = validate(values, where=type(self).__name__, params=kinds.get("mlp").params)
        out = {k: checked[k] for k in values}
        out["hidden"] = list(out["hidden"])
        return out

    @classmethod
    def from_model(cls, conn: Database, name: str, version: int | None = None) -> _BaseMLP:
        """A fitted estimator for a stored MLP (latest version unless given)."""
        with connected(conn) as c:
            row = training.model(c, name, version)
            hist = training.history(c, name, row["version"])
        task = (row.get("stored") or {}).get("task")
        if row.get("kind") != "mlp" or task != cls.TASK:
            other = "MLPRegressor" if cls.TASK == "classification" else "MLPClassifier"
            raise InvalidParameter(
                f"model {name!r} is not an MLP with task {cls.TASK!r}",
                hint=f"Load it with {other}.from_model, or a GLM with SGDClassifier/"
                     "SGDRegressor.from_model.")
        p = row["params"]
        reverse = {v: k for k, v in MLP_RENAMED.items()}
        kwargs = {reverse.get(k, k): v for k, v in p.items()
                  if reverse.get(k, k) in cls._PARAM_NAMES and k != "shuffle"}
        kwargs["hidden_layer_sizes"] = tuple(kwargs.get("hidden_layer_sizes") or ())
        shuffle = {v: k for k, v in _SHUFFLE.items()}.get(p.get("shuffle"), p.get("shuffle"))
        est = cls(**{**kwargs, "shuffle": shuffle, "model_name": name})
        est._set_fitted(row, hist)
        return est

    def _set_fitted(self, row: dict[str, Any], hist: list[dict[str, Any]]) -> None:
        """Fitted attributes from a registry row: layers, classes, iterations, history."""
        import pandas as pd

        stored = row.get("stored") or {}
        self.model_name_ = row["model_name"]
        self.version_ = int(row["version"])
        self.feature_names_in_ = np.asarray(row["features"], dtype=object)
        sizes = [int(s) for s in stored.get("sizes", [])]
        self.n_features_in_ = sizes[0] if sizes else len(row["features"])
        self.n_layers_ = len(sizes)
        self.n_outputs_ = sizes[-1] if sizes else None
        self.out_activation_ = "softmax" if self.TASK == "classification" else "identity"
        metrics = row["metrics"] or {}
        self.n_iter_ = int(metrics.get("epochs") or len(hist))
        self.converged_ = bool(metrics.get("converged"))
        self.loss_ = metrics.get("train_loss")
        self.best_validation_loss_ = metrics.get("validation_loss")
        columns = ["epoch", "train_loss", "validation_loss", "learning_rate", "rows", "seconds"]
        run = max((r["run_id"] for r in hist), default=None)
        self.history_ = pd.DataFrame([{k: r[k] for k in columns} for r in hist
                                      if r["run_id"] == run], columns=columns)
        self.loss_curve_ = self.history_["train_loss"].tolist()
        if row["classes"] is not None:
            self.classes_ = label_values(row)
        self.metrics_ = dict(metrics)

    def summary(self, conn: Database) -> Any:
        raise AttributeError("an MLP has no coefficient table; see n_layers_, history_ and "
                             "bismarck.models.stored")


class MLPClassifier(_BaseMLP):
    """Multi-layer perceptron classifier (softmax over the label's classes, cross-entropy)
    trained by backpropagation on packed mini-batches inside PostgreSQL; scikit-learn's
    parameter names and defaults. ``classes_`` are the label's values."""

    TASK: ClassVar[str] = "classification"
    SCORE: ClassVar[str] = "accuracy"
    _PREDICT: ClassVar[str] = "predict_class"

    def predict_proba(self, conn: Database, table: str,
                      order_by: str | None = None) -> np.ndarray:
        """``(n, K)`` class probabilities in the order of ``classes_``; NaN rows for a row with
        a NULL, NaN or infinite feature."""
        p = self._scores(conn, table, "predict_proba", None, order_by)
        assert isinstance(p, np.ndarray)
        return p


class MLPRegressor(_BaseMLP):
    """Multi-layer perceptron regressor (identity output, squared error) trained by
    backpropagation on packed mini-batches inside PostgreSQL; scikit-learn's names."""

    TASK: ClassVar[str] = "regression"
    SCORE: ClassVar[str] = "r2"


class MatrixFactorization:
    """Low-rank matrix factorisation of (row id, column id, value) triples, trained in
    PostgreSQL (``bismarck.train_mf``): ``r̂ = mean_ + row_bias_[u] + col_bias_[i] +
    row_factors_[u] · col_factors_[i]``.

        mf = MatrixFactorization(rank=5, random_state=0)
        mf.fit(None, table="ratings", row_col="user_id", col_col="item_id", value_col="rating")
        mf.predict(None, [1, 1], [10, 20])        # unknown="error" | "baseline" | "null"
        mf.recommend(None, 1, k=10)               # [(item id, score), ...], rated items left out
        mf.evaluate(None, "ratings_test")         # rmse, mae, rows, unknown_pairs, skipped_rows

    Parameters are those of ``bismarck.train_mf`` (``rank``, ``alpha``, ``alpha_bias``,
    ``learning_rate``, ``eta0``, ``power_t``, ``batch_size``, ``block_size``, ``init_std``,
    ``tol``, ``n_iter_no_change``, ``validation_fraction``), with scikit-learn's ``max_iter``
    (max_epochs) and ``random_state`` (seed). ``score`` is the negative RMSE (higher is
    better, as scikit-learn's ``neg_root_mean_squared_error``).
    """

    _PARAM_NAMES: ClassVar[tuple[str, ...]] = (
        "rank", "alpha", "alpha_bias", "learning_rate", "eta0", "power_t", "max_iter", "tol",
        "n_iter_no_change", "batch_size", "block_size", "init_std", "random_state",
        "validation_fraction", "model_name")

    def __init__(self, rank: int = 10, *, alpha: float = 0.02, alpha_bias: float | None = None,
                 learning_rate: str = "invscaling", eta0: float = 0.03, power_t: float = 0.5,
                 max_iter: int = 30, tol: float | None = 1e-4, n_iter_no_change: int = 3,
                 batch_size: int = 1, block_size: int = 1024, init_std: float = 0.1,
                 random_state: int | None = None, validation_fraction: float = 0.0,
                 model_name: str | None = None) -> None:
        self.rank = rank
        self.alpha = alpha
        self.alpha_bias = alpha_bias
        self.learning_rate = learning_rate
        self.eta0 = eta0
        self.power_t = power_t
        self.max_iter = max_iter
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.batch_size = batch_size
        self.block_size = block_size
        self.init_std = init_std
        self.random_state = random_state
        self.validation_fraction = validation_fraction
        self.model_name = model_name

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters (scikit-learn's protocol)."""
        return {name: getattr(self, name) for name in self._PARAM_NAMES}

    def set_params(self, **params: Any) -> MatrixFactorization:
        """Change constructor parameters; returns self."""
        for name, value in params.items():
            if name not in self._PARAM_NAMES:
                raise ValueError(f"invalid parameter {name!r} for MatrixFactorization; valid "
                                 f"parameters: {', '.join(self._PARAM_NAMES)}")
            setattr(self, name, value)
        return self

    def bismarck_params(self) -> dict[str, Any]:
        """The parameters in bismarck's names, validated as ``bismarck.train_mf`` does."""
        from bismarckpy.kinds.mf import validate as validate_mf

        values = {RENAMED.get(k, k): getattr(self, k) for k in self._PARAM_NAMES
                  if k != "model_name"}
        checked = validate_mf(values)
        if self.alpha_bias is None:
            values.pop("alpha_bias")
        return {k: checked[k] for k in values}

    def fit(self, conn: Database, table: str, row_col: str, col_col: str,
            value_col: str) -> MatrixFactorization:
        """Train on ``table``'s triples in the server and store the model; returns self."""
        from bismarck_controller import mf_training

        params = self.bismarck_params()
        with connected(conn) as c:
            result = mf_training.train_mf(c, table, row_col, col_col, value_col,
                                          self.model_name, **params)
            self._load(c, result.model_name, result.version)
        return self

    @classmethod
    def from_model(cls, conn: Database, name: str,
                   version: int | None = None) -> MatrixFactorization:
        """A fitted estimator for a stored factorisation (latest version unless given)."""
        with connected(conn) as c:
            row = training.model(c, name, version)
            if row.get("kind") != "mf":
                raise InvalidParameter(f"model {name!r} is not a matrix factorisation",
                                       hint="Load it with SGDClassifier or SGDRegressor.")
            p = row["params"]
            kwargs = {k: p[RENAMED.get(k, k)] for k in cls._PARAM_NAMES
                      if RENAMED.get(k, k) in p}
            est = cls(model_name=name, **kwargs)
            est._load(c, name, row["version"])
        return est

    def _load(self, c: Any, name: str, version: int) -> None:
        """Fitted attributes from the registry row and its history."""
        import pandas as pd

        from bismarckpy import factorization

        row = training.model(c, name, version)
        hist = training.history(c, name, version)
        f = factorization.loads(bytes(row["state"]))
        self.model_name_, self.version_ = row["model_name"], int(row["version"])
        self.row_col_, self.col_col_ = row["features"]
        self.value_col_ = row["label"]
        self.mean_ = f.mean
        self.row_ids_, self.col_ids_ = f.row_ids, f.col_ids
        self.row_bias_, self.col_bias_ = f.row_bias, f.col_bias
        self.row_factors_, self.col_factors_ = f.P, f.Q
        metrics = row["metrics"] or {}
        self.metrics_ = dict(metrics)
        self.n_iter_ = int(metrics.get("epochs") or len(hist))
        self.converged_ = bool(metrics.get("converged"))
        columns = ["epoch", "train_loss", "validation_loss", "learning_rate", "rows", "seconds"]
        run = max((r["run_id"] for r in hist), default=None)
        self.history_ = pd.DataFrame([{k: r[k] for k in columns} for r in hist
                                      if r["run_id"] == run], columns=columns)

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_name_"):
            raise AttributeError("this MatrixFactorization is not fitted yet: call fit() or "
                                 "MatrixFactorization.from_model() first")

    def predict(self, conn: Database, row_ids: Sequence[int], col_ids: Sequence[int],
                unknown: str = "error") -> np.ndarray:
        """Predicted values for the pairs (``bismarck.predict_mf``); NaN where NULL."""
        from bismarck_controller import mf_training

        self._check_fitted()
        with connected(conn) as c:
            values = mf_training.predict_mf(c, self.model_name_, row_ids, col_ids,
                                            unknown=unknown, version=self.version_)
        return np.array([np.nan if v is None else v for v in values], dtype=float)

    def recommend(self, conn: Database, row_id: int, k: int = 10,
                  exclude_rated: bool = True) -> list[tuple[int, float]]:
        """The ``k`` best (column id, score) pairs for ``row_id`` (``bismarck.recommend_mf``)."""
        from bismarck_controller import mf_training

        self._check_fitted()
        with connected(conn) as c:
            return mf_training.recommend(c, self.model_name_, row_id, k,
                                         exclude_rated=exclude_rated, version=self.version_)

    def evaluate(self, conn: Database, table: str) -> dict[str, float | None]:
        """``bismarck.evaluate`` on ``table`` (the same column names): rmse, mae, rows,
        unknown_pairs, skipped_rows."""
        self._check_fitted()
        with connected(conn) as c:
            return training.evaluate(c, self.model_name_, table, self.version_)

    def score(self, conn: Database, table: str) -> float:
        """Negative RMSE on ``table`` (higher is better)."""
        return -float(self.evaluate(conn, table)["rmse"])

    def plot_history(self, ax: Any = None) -> Any:
        """Train (solid) and validation (dashed) mean squared error per epoch."""
        from bismarck_controller.plots import Curve, draw

        self._check_fitted()
        h = self.history_
        curve = Curve(f"{self.model_name_} v{self.version_}", h["epoch"].tolist(),
                      _optional(h["train_loss"]), _optional(h["validation_loss"]))
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(7, 4))
        return draw(ax, [curve])


def _floats(values: Sequence[Any]) -> np.ndarray:
    """JSON numbers and nulls as a float array (null: NaN)."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _optional(series: Any) -> list[float | None]:
    """A pandas column as floats, missing values as None."""
    return [None if v is None or v != v else float(v) for v in series.tolist()]


__all__ = ["LinearRegression", "LogisticRegression", "MLPClassifier", "MLPRegressor",
           "MatrixFactorization", "SGDClassifier", "SGDRegressor"]
