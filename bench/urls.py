"""URLs of the benchmark server: the project's, plus ``bench/ceiling/`` (never in the app)."""

from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from project.urls import urlpatterns as project_urlpatterns

CEILING_BODY = b'{"id":"00000000-0000-0000-0000-000000000000","state_type":"SCHEDULED"}'


@csrf_exempt
async def ceiling(request: HttpRequest) -> HttpResponse:
    """The server's ceiling: an async view that answers 201 and touches no queue or database."""
    return HttpResponse(CEILING_BODY, status=201, content_type="application/json")


urlpatterns = [*project_urlpatterns, path("bench/ceiling/", ceiling, name="bench-ceiling")]
