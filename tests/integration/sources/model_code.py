# An MLflow model from code: scales its inputs by the factor in its artifact "factor".
import mlflow.pyfunc
from mlflow.models import set_model


class Scale(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        with open(context.artifacts["factor"]) as file:
            self.factor = float(file.read())

    def predict(self, context, model_input, params=None):
        return [float(x) * self.factor for x in model_input]


set_model(Scale())
