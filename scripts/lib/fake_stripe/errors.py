"""Stripe's error shape: StripeError (an error answer: status, error object,
whether an Idempotency-Key keeps it), the usual 400s (invalid, no_such),
the canned error of a bare status (fault rules) and the body of an error
answer (error_body)."""

from .common import now


def doc_url(code):
    return "https://stripe.com/docs/error-codes/" + code.replace("_", "-")


class StripeError(Exception):
    """An answer in Stripe's error shape.  store=False: not kept under an
    Idempotency-Key (Stripe keeps nothing when parameters fail validation)."""

    def __init__(self, status, message, type_="invalid_request_error",
                 code=None, param=None, store=True, headers=None, **extra):
        super().__init__(message)
        self.status = status
        self.store = store
        self.headers = headers or {}
        err = {"type": type_}
        if code:
            err["code"] = code
            err["doc_url"] = doc_url(code)
        err["message"] = message
        if param:
            err["param"] = param
        err.update(extra)
        self.error = err


def invalid(message, param=None, code=None, store=False, **extra):
    return StripeError(400, message, code=code, param=param, store=store,
                       **extra)


def no_such(kind, ident, param, status=400):
    return StripeError(status, "No such %s: '%s'" % (kind, ident),
                       code="resource_missing", param=param, store=True)


def canned_error(status):
    """The error Stripe answers with for a bare status (fault injection)."""
    if status == 429:
        return StripeError(429, "Request rate limit exceeded. Learn more about"
                           " rate limits here https://stripe.com/docs/"
                           "rate-limits.", code="rate_limit")
    if status == 409:
        return StripeError(409, "This object cannot be accessed right now "
                           "because another API request or Stripe process is "
                           "currently accessing it. If you see this error "
                           "intermittently, retry the request. If you see "
                           "this error frequently and are making multiple "
                           "concurrent requests to a single object, make your "
                           "requests serially or at a lower rate.",
                           code="lock_timeout")
    if status == 402:
        return StripeError(402, "Your card was declined.", "card_error",
                           code="card_declined",
                           decline_code="generic_decline")
    if status == 401:
        return StripeError(401, "Invalid API Key provided: sk_test_****")
    if status == 403:
        return StripeError(403, "The provided key does not have the required "
                           "permissions for this endpoint.")
    if status == 404:
        return StripeError(404, "Unrecognized request URL.")
    if status >= 500:
        return StripeError(status, "Sorry, something went wrong. We've "
                           "already been notified of the problem, but if you "
                           "need any help, you can reach us at "
                           "support.stripe.com/contact.", "api_error")
    return StripeError(status, "Invalid request.")


def error_body(err, req_id):
    e = dict(err.error)
    e["request_log_url"] = ("https://dashboard.stripe.com/test/logs/%s?t=%d"
                            % (req_id, now()))
    return {"error": e}
